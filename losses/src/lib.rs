//! Distances, miners, reducers and metric-learning losses for burn.
