from lmrnn.cli import run

run()
