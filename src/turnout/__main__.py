from turnout.cli.main import main

main()
