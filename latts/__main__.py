from latts.cli import app

app(prog_name="latts")
