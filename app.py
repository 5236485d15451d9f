"""U-Net Lab: the Streamlit app. Start it with ``streamlit run app.py``.

This file only builds the navigation; each page is a file in ``pages/`` (layout only,
the logic lives in ``core``), and every page file also runs on its own.
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="U-Net Lab", page_icon=":material/biotech:", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/1_Train.py", title="Train", icon=":material/model_training:", url_path="train"),
        st.Page("pages/2_Compare.py", title="Compare", icon=":material/table_chart:", url_path="compare"),
        st.Page("pages/3_Curves.py", title="Curves", icon=":material/show_chart:", url_path="curves"),
        st.Page("pages/4_Masks.py", title="Masks", icon=":material/layers:", url_path="masks"),
        st.Page("pages/5_Segment.py", title="Segment", icon=":material/image_search:", url_path="segment"),
    ]
)
navigation.run()
