"""``python -m lamcsp.campaign --reference > docs/campaign_reference.md``."""

import sys

from lamcsp.campaign.reference import main

sys.exit(main())
