"""Test-suite root: pytest puts this folder on sys.path, so helpers shared by several test
folders (``_member_support``) import by their module name."""
