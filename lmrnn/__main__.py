from lmrnn.cli import app

app(prog_name="lmrnn")
