"""The collector: Deribit's stream in, PostgreSQL rows out, with every gap accounted for."""
