"""Model code: the transaction schema, feature schema, fraud model, training and loading."""
