from injection.cli import app

app()
