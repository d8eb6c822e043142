"""Course tooling: notebook authoring (nbtool), student notebooks (student), grading (grade)."""
