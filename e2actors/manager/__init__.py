"""The manager: policy, sizing, placement, routing; deploy, monitor, scale, recover."""
