"""The streaming Data Remixing trainer (issue 3): not implemented yet; this package only reserves the name."""
