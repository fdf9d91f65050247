"""Policy: sovereignty, clearance, retention, withdrawals, pseudonyms, firm names, the audit chain and API principals."""
