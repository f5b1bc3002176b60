"""TLS for Docxy's listeners: ACME-issued certificates through endpoint strings."""
