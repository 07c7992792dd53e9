from smsbridge.cli.main import main

raise SystemExit(main())
