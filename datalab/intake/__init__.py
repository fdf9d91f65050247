"""Intake: every push gets a receipt at once (landing), files are sniffed (formats), parsed to the raw table (ingest), and live streams land the same way."""
