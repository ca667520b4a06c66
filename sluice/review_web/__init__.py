"""The reviewer web app of the review chains: ``sluice review serve`` (see :mod:`sluice.review_web.app`)."""
