"""The editors' desk: pages for people, as the CLI is commands for people."""
