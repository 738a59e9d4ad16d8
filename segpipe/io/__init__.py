"""Reading and writing: atomic file writes, versioned JSON, and medical images through SimpleITK."""
