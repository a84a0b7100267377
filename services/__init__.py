"""selfagent services: planner, grounder, actuator, gateway, and the shared bus helpers."""
