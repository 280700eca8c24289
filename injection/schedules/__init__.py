"""Built-in injection schedules (YAML, shipped as package data); see injection.schedule."""
