"""Runs the repository's adapter tests (Testing/test_adapter*.py, test_inference_process.py,
test_module_logic.py) with pytest inside Slicer's Python, where `slicer` is the application's
own MRML library.

Registered with slicer_add_python_unittest; skipped when pytest is not installed in Slicer
or the source tree (with Testing/) is not beside this module.
"""

import unittest
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[3]
SUITES = ("test_adapter.py", "test_adapter_export.py", "test_adapter_bundle.py", "test_inference_process.py",
          "test_module_logic.py")


class LesionDetectAdapterTest(unittest.TestCase):
    def test_adapter_suites_pass_inside_slicer(self):
        try:
            import pytest
        except ImportError:
            self.skipTest("pytest is not installed in Slicer's Python")
        suites = [SOURCE_ROOT / "Testing" / name for name in SUITES]
        if not all(path.is_file() for path in suites):
            self.skipTest(f"the source tree's Testing/ folder is not at {SOURCE_ROOT}")
        code = pytest.main(["-q", "-p", "no:cacheprovider", *map(str, suites)])
        self.assertEqual(int(code), 0, "the adapter tests failed inside Slicer (see the output above)")


if __name__ == "__main__":
    unittest.main()
