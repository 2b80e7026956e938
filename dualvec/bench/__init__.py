"""The benchmark's library: measuring (measure, load), the peers' adapters (peers), report and plots (report), the
whole run (run), and the model generator and profiles it is judged on (make_model, model_profile, index_options).
Entry points live in scripts/."""
