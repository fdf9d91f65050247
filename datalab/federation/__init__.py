"""Federation of lab sites over the Eclipse Dataspace Protocol (DSP 2025-1).

One lab instance is one site. ``identity`` holds the site's Ed25519 key pair,
the operator-registered peers and the short-lived signed tokens every
site-to-site request carries; ``dsp`` builds and checks the DSP messages.
"""
