"""The search (spec 1): tree arrays, selection and root rules, the simulation loop, the planner, the literal oracle."""
