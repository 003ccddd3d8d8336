from optionfeed.cli import main

raise SystemExit(main())
