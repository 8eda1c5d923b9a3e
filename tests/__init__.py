"""The test suite as a package: helpers are imported by qualified name (`tests.tools`,
`tests.support.ct`, `tests.training.training_helpers`), so no test folder is ever put on
sys.path and none can shadow a top-level package of the project (tests/training vs training)."""
