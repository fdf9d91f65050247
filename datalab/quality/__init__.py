"""Quality: the expectations a contract implies and the Great Expectations runner that checks them (whole or in chunks)."""
