"""clinfuse: a hospital's multimodal exports to a trustworthy clinical model.

The user's layout keeps orchestration/, assets/, models/ and synthetic/ at the top of the
repository; this package holds links to them so that they import as `clinfuse.*` and static
tools (pyright, mypy, jedi, editors) resolve them like any other package (docs/architecture.md).
"""
