from jmlr.cli import main

raise SystemExit(main())
