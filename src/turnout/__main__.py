from turnout.cli.main.main import main

main()
