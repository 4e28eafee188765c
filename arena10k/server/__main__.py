from arena10k.server.run import main

main()
