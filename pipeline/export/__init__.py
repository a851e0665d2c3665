"""From a trained model to a served one: evaluate and bless, export the SavedModel, warm up, push."""
