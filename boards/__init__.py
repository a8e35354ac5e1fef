"""Board definitions shipped with microexport (see docs/boards.md)."""
