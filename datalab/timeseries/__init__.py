"""Time-series deliveries (sensor readings): the lab's first kind of data.

``kind.py`` holds the ``Kind`` the registry (``datalab.kinds``) hands out for
contracts of kind ``timeseries``. Its parts still live in the core's flat
modules (``readers``, ``text_blocks``, ``long_series``, ``curate``,
``expectations``, ``sample``, ``datasheet``) until they move here.

Importing this package imports nothing: the contract's section table
(``datalab.kinds.sections``) and the registry load ``kind`` only when a
time-series contract is met.
"""
