"""The features service: user profiles, item feature rows and the event log, on an online store."""

from services.features.service import Config, FeaturesComponent, create

__all__ = ["Config", "FeaturesComponent", "create"]
