"""The fake dataset trees live in the package (each loader's example); re-exported for the tests and benchmarks."""
from faircompress.data.examples import make_ckplus, make_fer2013, make_rafdb, make_sfew, write_csv  # noqa: F401
