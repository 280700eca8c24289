from analysis.cli import app

app()
