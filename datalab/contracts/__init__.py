"""Contracts and what the lab reads from them: ODCS documents, policies, purposes, units, dataset specs."""
