from station_runtime.cli.app import main

main()
