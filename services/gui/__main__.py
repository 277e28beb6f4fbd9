from services.gui.server import main

main()
