"""Planning: the roofline cost model, per-host calibration of its coefficients, and the planner."""
