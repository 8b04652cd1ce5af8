//! System tests live under `tests/`; see the modules there.
