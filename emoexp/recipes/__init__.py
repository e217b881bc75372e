"""Pipeline stages. Each recipe owns Fabric: ``setup()`` then ``fabric.launch(main)``."""
