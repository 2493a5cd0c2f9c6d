"""Model and hook files written the way i6 setups write them for Mini-RETURNN (imports from ``returnn.*``)."""
