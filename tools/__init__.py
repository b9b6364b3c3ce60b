"""Applications over finished outputs: recipe tuning (`tools.tune`) and blind human rating (`tools.human_eval`)."""
