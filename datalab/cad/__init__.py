"""CAD deliveries (issue 3): STEP, STL and DXF in, a curated and validated CAD table out.

The modules are small and each holds one thing:

* ``sniff``: which format a file is, decided by its bytes, never its name;
* ``step_header``: the ISO 10303-21 header and data-section facts, pure Python;
* ``step_geometry``: exact B-rep geometry through OpenCASCADE (``OCP``);
* ``stl`` and ``dxf``: mesh and drawing readers;
* ``sandbox``: every parse in its own process with time and memory limits;
* ``features``: one row per file, in the contract's canonical length unit;
* ``signature``: the same part across formats and systems, exact duplicates;
* ``thumbnail``: a headless PNG per part;
* ``check``, ``curate``, ``suite``, ``publish``, ``cli``: the lab's stages.

Nothing here imports Dagster.
"""
