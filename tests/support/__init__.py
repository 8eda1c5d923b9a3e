"""Test-support code shared across the suites (synthetic CT DICOM: tests.support.ct)."""
