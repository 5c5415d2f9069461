//! End-to-end and property tests of Locus live in `tests/tests/`.
