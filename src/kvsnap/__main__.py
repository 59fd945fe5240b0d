from kvsnap.cli.main import run

run()
