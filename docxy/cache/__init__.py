"""The pull-through blob cache: content-addressed files on local disk."""
