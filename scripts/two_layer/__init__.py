"""The two-layer experiments of greedy forward selection, on a CPU in about a minute.

They reproduce, on synthetic data, the two-layer theory of

* Ye et al. (2020), "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection":
  greedy forward selection (their eq. 2) from a large mean-field network reaches loss O(1/n^2)
  in the subnetwork size n (Theorem 2/3, Figure 2), against O(1/n) for a random subset and for a
  network of size n trained by gradient descent (the mean-field rate of Section 3.3); the fast
  rate also holds for a large network with random weights (Section 3.4); greedy backward
  elimination (Section 3.5, Appendix 11) does worse than forward selection.
* Wolfe et al. (2023), "How Much Pre-training Is Enough to Discover a Good Subnetwork?":
  the bound of their Lemma 1 on the greedy loss, the pre-training sweep of their Figure 1
  (pruned accuracy against pre-training iterations and dataset size, binarized labels), and the
  distributed greedy selection of their Algorithm 3, which yields the central iterates.

The modules, each for one reason to change:

* `theory`: the network f_S, its data (sphere, teacher, initialization), mean-field training
  and the selection rules (greedy forward selection, backward elimination, random subsets)
  together with the polytope diameter and Lemma 1 bound: the objects the papers' statements are
  about, vectorized over the neuron output matrix Phi so that they run in seconds.
* `distributed`: Algorithm 3 of Wolfe et al. with real gloo processes; apart because only it
  needs torch.distributed and forked workers.
* `settings`: what an experiment depends on (`Settings`, `quick_settings`), read by both of the
  next two.
* `experiments`: the rate experiment over seeds, the pre-training sweep, the slope fits and
  `run`, which writes the figures and `toy_rates.json`: what is measured, and how.
* `plots`: the matplotlib figures; apart so that the measurements can change without touching
  the drawing, and the reverse.

`toy_two_layer.py` at the repository root is the command line (`make demo`). The toy keeps its
own selection code instead of calling `pruning.selection`: on a two-layer network a
subnetwork's output is a mean of rows of Phi, which the engine's model-and-mask interface
cannot exploit, and the engine minimises cross-entropy, not the theory's squared loss. Where
the two meet they agree: `mnist`'s BCE selection picks the neurons the engine picks
(tests/families/test_two_layer_engine.py), the subnetwork uses the engine's mixing weights and
Algorithm 3 its candidate split. The toy's function names say `two_layer` so they are not
mistaken for the engine's `greedy_forward_selection` and `backward_elimination`.
"""
